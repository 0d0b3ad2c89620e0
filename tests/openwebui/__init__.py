"""parley behind the real Open WebUI 0.12.4: its harness (conftest, driver, recorder) and tests."""
