"""The LangGraph graph: state, wiring, routing and stop rules, resume."""
