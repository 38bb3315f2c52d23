"""DataFlex weight."""
