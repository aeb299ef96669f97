Feature: Placement on the mixed 24 GB + 12 GB box
  The reference box pairs an RTX 3090 (24 GB) with an RTX 3060 (12 GB). Without those cards
  here, the example config declares them: placement, VRAM fit and the engines' GPU flags are
  computed for them, and the engines run on this machine's CPU. No pool pins a model to a
  card: every mask holds both cards, and a replica goes wherever its model fits.

  Background:
    Given a running orchestratord with a Ready llama.cpp pool

  @HOME-1004 @HOME-1001 @ORCH-3008 @OC-CORE-1010 @OC-CORE-1011 @ORCH-2104
  Scenario: Both cards' replicas decode at the same time under load
    Given orchestratord serving the example config "mixed-gpus-declared.yaml"
    When I list the replica sets
    Then pool "chat" has a Ready replica on GPU 0 and one on GPU 1
    When I start 4 long tasks at once
    Then the replicas on GPU 0 and GPU 1 are both decoding
    And the metrics count started tasks on both replicas

  @HOME-1004 @HOME-1001 @ORCH-3011 @OC-CORE-1012 @OC-POOL-3020
  Scenario: A model that fits only the 24 GB card is never placed on the 12 GB card
    Given the example config "mixed-gpus-declared.yaml"
    And a pool "big" for a 7B f16 model with ctx 4096 on devices 0 and 1
    When I plan the placement
    Then the plan puts pool "big" only on GPU 0
    And the plan puts pool "chat" on GPU 0 and GPU 1
