"""The agents (hardware analyst, fine-tuning planner, kernel tuner), the supervisor and brains."""
