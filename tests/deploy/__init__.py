"""tests.deploy: the production stack (Dockerfile, docker-compose.yml) checked without Docker."""
