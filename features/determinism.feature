Feature: Determinism by seed
  The same prompt, parameters, seed, sampler profile, engine build and model give the same
  tokens; another seed gives other tokens. llama.cpp's output depends on what else shares
  its batch, so `determinism: strict` runs a task alone on the engine.

  Background:
    Given a running orchestratord with a Ready llama.cpp pool

  @HOME-207 @ORCH-3045 @FR-DE-001 @OC-CORE-1030
  Scenario: Same seed, same text; other seed, other text
    When I submit a completion task for 32 fixed-length tokens with seed 1234
    And I remember the streamed text as first
    And I submit a completion task for 32 fixed-length tokens with seed 1234
    And I remember the streamed text as again
    And I submit a completion task for 32 fixed-length tokens with seed 4321
    And I remember the streamed text as other
    Then first and again are the same text
    And first and other are different texts

  @HOME-207 @ORCH-3046 @OC-CORE-1032
  Scenario: A strict task gives the same text while the pool is busy
    When I submit a strict completion task for 32 fixed-length tokens with seed 1234
    And I remember the streamed text as alone
    And I start a long task that keeps the pool busy
    And I submit a strict completion task for 32 fixed-length tokens with seed 1234
    And I remember the streamed text as under_load
    Then alone and under_load are the same text
