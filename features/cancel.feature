Feature: Cancel and disconnect free the engine slot
  Canceling is race-free: after the 204 no token frame follows and llama.cpp's own /slots
  shows the slot idle. A client that goes away cancels its task too.

  Background:
    Given a running orchestratord with a Ready llama.cpp pool

  @HOME-304 @ORCH-2003 @ORCH-3026 @OC-CTRL-2012 @OC-ADAPT-5010
  Scenario: Cancel mid-stream
    When I submit a completion task for 1900 fixed-length tokens
    And I read 3 token frames and cancel the task
    Then the response status is 204
    And the response has header "X-Correlation-Id"
    And the engine reports every slot idle
    And no token frame followed the cancel
    And the end frame says finish_reason "canceled"

  @HOME-305
  Scenario: A disconnect cancels the task
    When I submit a completion task for 1900 fixed-length tokens
    And I read 1 token frame and disconnect
    Then the task was canceled by the disconnect
