"""What Ollama's API is, independent of the gateway: how it names models, how it reads a
form. Modules here import nothing from the rest of the package."""
