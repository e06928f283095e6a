"""Barge-in simulation: the real gate, controller and playout track on a simulated media clock."""
