"""The trace and what it writes: COMPLIANCE.md, the JSON, the HTML page and its check in
Chromium, the diff against the committed report, the flaky list, Cucumber JSON, ReqIF, source
snippets, and the dashboard picture.
"""
