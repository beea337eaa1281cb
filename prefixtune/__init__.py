"""Prefix-tuning for frozen transformers language models (Li & Liang, ACL 2021)."""
