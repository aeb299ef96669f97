Feature: Bad input gets a typed 4xx, never a 500
  Everything is checked before a task is queued.

  Background:
    Given a running orchestratord with a Ready llama.cpp pool

  @HOME-205 @OC-CTRL-2010 @HOME-901 @ORCH-2006 @OC-CTRL-2030 @ORCH-3014 @OC-CORE-1020
  Scenario Outline: An invalid field is a 400 INVALID_PARAMS
    When I submit a task whose <field> is <value>
    Then the response status is 400
    And the error code is "INVALID_PARAMS"
    And the error message mentions "<mention>"

    Examples:
      | field    | value                     | mention                          |
      | task_id  | not a UUID                | task_id                          |
      | ctx      | a string                  | ctx                              |
      | ctx      | above the pool limit      | exceeds the pool limit           |
      | engine   | unknown                   | engine                           |
      | max_tokens | zero                    | max_tokens                       |
      | inputs   | given together with prompt | exactly one of prompt or inputs |
      | prompt   | missing                   | exactly one of prompt or inputs  |
      | priority | unknown                   | priority                         |
      | surprise | an unknown field          | surprise                         |

  @HOME-205 @ORCH-3015 @OC-CORE-1021
  Scenario: A prompt that leaves no room for max_tokens is refused, counted by the engine's tokenizer
    When I submit a task whose prompt needs more tokens than its ctx allows
    Then the response status is 400
    And the error code is "INVALID_PARAMS"
    And the error message mentions "exceed ctx"

  @HOME-901
  Scenario: An oversized body is a 413 envelope
    When I submit a task body of 2000000 bytes
    Then the response status is 413
    And the error code is "INVALID_PARAMS"
