"""A Starlette microservice behind a personal or team website: health, GitHub repositories, announcements."""

API_NAME = "website-api"
API_VERSION = 1
