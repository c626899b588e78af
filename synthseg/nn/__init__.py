"""The networks and their losses: the U-Net, Dice/cross-entropy losses, weight transfer between networks."""
