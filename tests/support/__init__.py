"""Test support shared by every test package: polling (`eventually`), nothing else imports tests."""
