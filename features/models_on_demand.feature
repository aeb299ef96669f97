Feature: Models on demand on one card
  Three GGUF files, one card that holds one of them at a time (the example
  models-on-demand.yaml, with generated files). Nothing is loaded at start; a model's engine
  starts when a task for it is queued and the task's stream says what it waits for; a load
  that does not fit unloads a model with nothing to do, never one with work; a model can be
  unloaded by hand when it is idle; a broken file fails its load and only its own pool.

  Background:
    Given a running orchestratord with a Ready llama.cpp pool

  @RES-101 @RES-102 @RES-201 @RES-202
  Scenario: A model loads on its first task and the stream says what the task waits for
    Given orchestratord serving the models-on-demand example
    Then no model is loaded
    When I run a task for "beta"
    Then the stream for "beta" said queued, then loading, then started, then end
    And "beta" is loaded on GPU 0

  @RES-103 @RES-205
  Scenario: A model that does not fit beside an idle one takes its place
    Given orchestratord serving the models-on-demand example
    When I run a task for "alpha"
    And I run a task for "gamma"
    Then "gamma" is loaded on GPU 0
    And "alpha" is unloaded
    And the metrics count 1 unload of "alpha" for "evicted"

  @RES-203
  Scenario: Stopping a model is refused while it has work and unloads it once idle
    Given orchestratord serving the models-on-demand example
    When I start a long task for "alpha"
    And I stop "alpha"
    Then the stop is refused with 409 saying "running"
    When I cancel the running task
    And I stop "alpha"
    Then the stop is answered 202
    And "alpha" is unloaded

  @RES-106
  Scenario: A broken model file fails its own load and no other
    Given the models-on-demand example with model "gamma" broken
    And orchestratord serving the models-on-demand example
    When I run a task for "gamma"
    Then the stream for "gamma" ended with error MODEL_LOAD_FAILED
    And "gamma" failed to load, saying why
    And a new task for "gamma" is refused with 503 MODEL_LOAD_FAILED
    When I run a task for "alpha"
    Then "alpha" is loaded on GPU 0
