"""DataFlex ops."""
