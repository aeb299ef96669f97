Feature: Bearer auth and correlation IDs
  One shared token protects the API; every response carries a correlation ID.

  Background:
    Given a running orchestratord with a Ready llama.cpp pool

  @HOME-102 @OC-CTRL-2040 @FR-SI-001 @HOME-103 @OC-CTRL-2052 @FR-OB-001
  Scenario: No token is a 401 that still echoes the correlation ID
    When I submit a task without a token and with X-Correlation-Id "bdd-corr-401"
    Then the response status is 401
    And the error code is "UNAUTHORIZED"
    And the response header "X-Correlation-Id" is "bdd-corr-401"

  @HOME-102 @OC-CTRL-2040
  Scenario: A wrong token is a 403
    When I submit a task with a wrong token
    Then the response status is 403
    And the error code is "FORBIDDEN"

  @HOME-103 @OC-CTRL-2052 @FR-OB-001
  Scenario: A sent correlation ID is echoed on a 202
    When I submit a task with X-Correlation-Id "bdd-corr-202"
    Then the response status is 202
    And the response header "X-Correlation-Id" is "bdd-corr-202"

  @HOME-103 @OC-CTRL-2052
  Scenario: A correlation ID is generated when none is sent
    When I ask for the capabilities
    Then the response carries a generated correlation ID
