"""Everything orchestratord sends to the network on someone's behalf: one policy, one client."""
