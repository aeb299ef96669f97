Feature: Backpressure when the queue is full
  The orchestrator owns the queue; when it is full the pool's policy answers with a 429
  that tells the client how long to back off.

  Background:
    Given a running orchestratord with a Ready llama.cpp pool

  @HOME-902 @HOME-203 @ORCH-2007 @ORCH-3005 @OC-CTRL-2011 @FR-DP-003 @OC-CORE-1001 @OC-CORE-1002
  Scenario: A full queue answers 429 with backoff headers and the policy
    When I submit long tasks until the queue is full
    Then the pool accepted exactly its slots plus its queue capacity
    And the response status is 429
    And the error code is "ADMISSION_REJECT"
    And the error policy_label is "reject"
    And the response has header "Retry-After"
    And the response has header "X-Backoff-Ms"
