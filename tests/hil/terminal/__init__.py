"""Tests for the simulated ZVT payment terminal in hil/terminal."""
