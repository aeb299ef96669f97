Feature: Admitting a task and streaming its tokens
  A client submits a task, gets admission metadata back, then reads the task's tokens
  from a real llama.cpp engine as Server-Sent Events.

  Background:
    Given a running orchestratord with a Ready llama.cpp pool

  @HOME-204 @HOME-206 @ORCH-2001 @ORCH-2008 @FR-DP-001 @FR-DP-005
  Scenario: A valid task is admitted with where it waits and when it should start
    When I submit a valid completion task using every optional field
    Then the response status is 202
    And the admission says where the task waits and when it should start
    And the response has header "X-Correlation-Id"

  @HOME-301 @HOME-302 @ORCH-2002 @ORCH-3029 @OC-CTRL-2020 @OC-CTRL-2021 @OC-CTRL-2022 @OC-CTRL-2023 @FR-DP-002 @OC-METRICS-7110
  Scenario: The stream carries the engine's tokens and ends exactly once
    When I submit a completion task for 24 fixed-length tokens
    And I read the task's stream to the end
    Then the first frame is "started"
    And the stream has at least 1 "token" frame
    And the stream has at least 1 "metrics" frame
    And the stream ends with exactly one terminal frame, an end
    And the end frame counts every token frame
    And the end frame says finish_reason "length"
    And every frame matches its contract schema

  @HOME-305
  Scenario: A stream for an unknown task is a 404 envelope
    When I open the stream of an unknown task
    Then the response status is 404
    And the error code is "NOT_FOUND"

  @HOME-208 @ORCH-3024
  Scenario: A duplicate task id is refused
    When I submit a valid completion task
    And I submit the same task again
    Then the response status is 409
    And the error code is "CONFLICT"
