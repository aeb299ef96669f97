Feature: Determinism by seed
  The same prompt, parameters, seed, sampler profile, engine build and model give the same
  tokens; another seed gives other tokens.

  Background:
    Given a running orchestratord with a Ready llama.cpp pool

  @HOME-207 @ORCH-3045 @FR-DE-001 @OC-CORE-1030 @OC-CORE-1031
  Scenario: Same seed, same text; other seed, other text
    When I submit a completion task for 32 fixed-length tokens with seed 1234
    And I remember the streamed text as first
    And I submit a completion task for 32 fixed-length tokens with seed 1234
    And I remember the streamed text as again
    And I submit a completion task for 32 fixed-length tokens with seed 4321
    And I remember the streamed text as other
    Then first and again are the same text
    And first and other are different texts
