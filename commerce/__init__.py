"""Catalogue, flash sales, inventory (atomic Lua), payments, hold expiry and the SQL order writer."""
