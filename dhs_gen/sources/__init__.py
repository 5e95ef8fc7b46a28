"""Source models: Sersic and pixel-template profiles, Gen7 hybrids, Gen5 COSMOS and Gen6 deep banks."""
