"""DataFlex LLaMA-Factory integration."""
