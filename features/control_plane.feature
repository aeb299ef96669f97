Feature: The control plane: drain and resume, the model catalog, artifacts
  An operator drains a pool before maintenance and resumes it after; a model is registered,
  retired, and from then on refused; plans and traces are kept as content-addressed artifacts.

  Background:
    Given a running orchestratord with a Ready llama.cpp pool

  @HOME-504 @ORCH-2101 @OC-CTRL-2002
  Scenario: A drained pool refuses new work until it is resumed
    When I drain pool "default" with a deadline of 5000 ms
    Then the response status is 202
    And the health of pool "default" says draining is true
    When I submit a valid completion task
    Then the response status is 503
    And the error code is "POOL_UNAVAILABLE"
    And the response has header "Retry-After"
    When I resume pool "default"
    Then the response status is 200
    When I submit a valid completion task
    Then the response status is 202

  @HOME-501 @HOME-502 @ORCH-3060 @ORCH-3062 @ORCH-3069 @ORCH-3070 @ORCH-3072 @FR-CP-001
  Scenario: A retired model is refused with MODEL_DEPRECATED
    When I register the model "bdd-retired-model" with a made-up digest
    Then the response status is 201
    And the body matches the CatalogModel contract schema
    When I set the state of model "bdd-retired-model" to "Retired"
    Then the response status is 202
    When I read model "bdd-retired-model"
    Then the body matches the CatalogModel contract schema
    When I submit a task for model "bdd-retired-model"
    Then the response status is 503
    And the error code is "MODEL_DEPRECATED"
    When I set the state of model "bdd-retired-model" to "Active"
    Then the response status is 409
    And the error code is "CONFLICT"

  @HOME-701 @ORCH-3097 @ORCH-3098 @OC-CTRL-2065 @OC-CTRL-2066 @FR-AR-001
  Scenario: An artifact is stored once under its digest and read back
    When I store a plan artifact tagged "bdd"
    Then the response status is 201
    And the body matches the ArtifactRef contract schema
    When I store the same plan artifact again
    Then the response status is 201
    When I read the stored artifact
    Then the response status is 200
    And the body matches the Artifact contract schema
