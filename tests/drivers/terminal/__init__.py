"""Tests for the payment-terminal drivers: the sans-IO ZVT codec and its transport."""
