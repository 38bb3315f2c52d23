"""DataFlex mix."""
