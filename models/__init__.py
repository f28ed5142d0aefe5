"""Model classes, one module per category. Heavy libraries are imported inside each module."""
