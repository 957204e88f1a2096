"""The adaptive camouflage engine: engagement bands and arms, the UCB1 bandit, sessions,
honeytokens, events and labels. The gateway (``feint.camouflage.gateway``) calls into it."""
