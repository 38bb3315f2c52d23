"""DataFlex select."""
