Feature: Sessions and the outbound fetch tool
  A session ties a conversation's tasks together (and to its engine slot); it can be read and
  ended. Agents reach the web only through the fetch tool, whose policy refuses what it must
  and writes down every decision.

  Background:
    Given a running orchestratord with a Ready llama.cpp pool

  @HOME-401 @ORCH-2004 @ORCH-2005 @FR-DP-004
  Scenario: A session is read, ended, and then takes no more tasks
    When I submit a valid completion task in a new session
    And I read the task's stream to the end
    And I read that session
    Then the response status is 200
    And the body matches the SessionInfo contract schema
    When I end that session
    Then the response status is 204
    When I read that session
    Then the response status is 404
    When I submit another task in that session
    Then the response status is 409
    And the error code is "CONFLICT"

  @HOME-104 @FR-TL-001 @FR-TL-002 @OC-POLICY-4030 @OC-POLICY-4032 @HARD-101
  Scenario Outline: The fetch tool refuses what the default policy does not allow
    When I ask the fetch tool for "<url>"
    Then the response status is 403
    And the error code is "FORBIDDEN"
    And the error message mentions "<reason>"
    And the tool audit log's last record is a denial

    Examples:
      | url                            | reason                         |
      | http://127.0.0.1:9/secrets     | IP literal 127.0.0.1           |
      | http://2130706433:9/secrets    | IP literal 127.0.0.1           |
      | http://[::ffff:127.0.0.1]:9/   | IP literal ::ffff:127.0.0.1    |
      | http://localhost:9/            | not a public address           |
      | file:///etc/passwd             | is not http or https           |
