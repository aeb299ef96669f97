Feature: Capabilities and metrics
  A client can discover engines, pools and safe concurrency; Prometheus can scrape.

  Background:
    Given a running orchestratord with a Ready llama.cpp pool

  @HOME-601 @HOME-602 @HOME-1002 @OC-CTRL-2060 @OC-CTRL-2061 @ORCH-3095 @ORCH-3096 @FR-DV-001 @FR-DV-002 @FR-MA-001 @FR-PF-001 @ORCH-3044
  Scenario: Capabilities report the API version and the Ready pool's slots
    When I ask for the capabilities
    Then the response status is 200
    And the capabilities api_version equals the OpenAPI info.version
    And the capabilities list the pool with its slots and readiness

  @HOME-801 @OC-CTRL-2051 @ORCH-3028
  Scenario: Metrics carry the Home profile's series and labels after real traffic
    When I submit a completion task for 8 fixed-length tokens
    And I read the task's stream to the end
    And I scrape the metrics
    Then the metrics include "tokens_out_total" with labels engine, engine_version, pool_id, replica_id
    And the metrics include "tasks_enqueued_total" with labels engine, engine_version, pool_id, replica_id, priority
    And the metrics include "queue_depth" with labels engine, engine_version, pool_id, priority

  @HOME-506 @ORCH-2103 @OC-CTRL-2001 @OC-POOL-3001 @ORCH-3002
  Scenario: The preloaded pool reports itself live and Ready
    When I ask for the health of pool "default"
    Then the response status is 200
    And the body matches the PoolHealth contract schema
    And the pool is live and Ready with no last error
