"""DataFlex testing."""
