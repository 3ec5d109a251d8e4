"""Data: reading the source layouts, checking, preparing and splitting slices, and the phantom chest CT."""
