"""Inference three ways (batch, stream, online serving), with one prediction record."""
