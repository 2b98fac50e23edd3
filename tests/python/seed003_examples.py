"""Seed 003's README examples, as written there, against a running `ferry run`.

Changed from the README: WEB_SERVICE_URL comes from the environment (ferry's API), the
partition calls carry the source's access token (ferry requires it on writes), and the
lock example calls /partitions/lock (the README's calls /partitions/unlock twice, a slip).
Each step's expectation is checked; any failure exits non-zero with what was seen.
"""

import datetime as dt
import os
import sys
from datetime import timedelta
from dateutil import tz

import requests
from urllib.parse import urljoin

WEB_SERVICE_URL = os.environ["WEB_SERVICE_URL"]


def check(what, condition, response):
    if not condition:
        sys.exit(f"FAILED: {what}: {response.status_code} {response.text}")
    print(f"ok: {what}")


# Source Registration
SOURCE_NAME = 'public.some_source'
SOURCE_OWNER = "[email protected]"

response = requests.post(
    urljoin(WEB_SERVICE_URL, 'sources/register'),
    params={"source_name": SOURCE_NAME, "owner": SOURCE_OWNER}
)

status_code = response.status_code
data = response.json()
check("the first source registration gives a token",
      status_code == 201 and data["status_code"] == 201
      and len(data["registered_object"]["access_token"]) == 64, response)
ACCESS_TOKEN = data["registered_object"]["access_token"]

# "All following attempts to register source won't create an entity and won't provide
# Access Keys"
response = requests.post(
    urljoin(WEB_SERVICE_URL, 'sources/register'),
    params={"source_name": SOURCE_NAME, "owner": SOURCE_OWNER}
)
data = response.json()
check("a second source registration gives no token",
      response.status_code == 409 and data["status_code"] == 409
      and "access_token" not in response.text
      and response.headers["content-type"] == "application/problem+json", response)

# Provider Registration
PROVIDER_NAME = '[email protected]'

response = requests.post(
    urljoin(WEB_SERVICE_URL, 'providers/register'),
    params={"provider_name": PROVIDER_NAME, "access_token": "0" * 64}
)
check("a wrong token is refused", response.status_code == 403, response)

response = requests.post(
    urljoin(WEB_SERVICE_URL, 'providers/register'),
    params={"provider_name": PROVIDER_NAME, "access_token": ACCESS_TOKEN}
)

status_code = response.status_code
data = response.json()
check("the provider is registered",
      status_code == 201 and data["registered_object"]["name"] == PROVIDER_NAME
      and data["registered_object"]["source"] == SOURCE_NAME, response)

# Partition Registration
PARTITION_START = dt.datetime(2000, 1, 1, 0, 0, 0, 0, tzinfo=tz.UTC)
PARTITION_END = dt.datetime(2000, 1, 2, 0, 0, 0, 0, tzinfo=tz.UTC)

response = requests.post(
    urljoin(WEB_SERVICE_URL, 'partitions/register'),
    params={
        "start": str(PARTITION_START),
        "end": str(PARTITION_END),
        "source_name": SOURCE_NAME,
        "provider_name": PROVIDER_NAME,
        "access_token": ACCESS_TOKEN,
    }
)

status_code = response.status_code
data = response.json()
check("the partition is registered",
      status_code == 201
      and data["registered_object"]["start"].startswith("2000-01-01T00:00:00"), response)

# Partition Lock | Unlock
lock_response = requests.post(
    urljoin(WEB_SERVICE_URL, 'partitions/lock'),
    params={
        "start": str(PARTITION_START),
        "end": str(PARTITION_END),
        "source_name": SOURCE_NAME,
        "provider_name": PROVIDER_NAME,
        "access_token": ACCESS_TOKEN,
    }
)
check("the partition is locked",
      lock_response.status_code == 200
      and lock_response.json()["registered_object"]["state"] == "locked", lock_response)

# Check Readiness (while locked)
response = requests.get(
    urljoin(WEB_SERVICE_URL, f'sources/{SOURCE_NAME}/check_readiness'),
    params={
        "source_name": str(SOURCE_NAME),
        "start": str(PARTITION_START),
        "end": str(PARTITION_END),
    }
)

status_code = response.status_code
data = response.json()
check("not ready while locked, saying by whom",
      status_code == 200 and data["is_ready"] is False
      and "locked by " + PROVIDER_NAME in data["message"], response)

unlock_response = requests.post(
    urljoin(WEB_SERVICE_URL, 'partitions/unlock'),
    params={
        "start": str(PARTITION_START),
        "end": str(PARTITION_END),
        "source_name": SOURCE_NAME,
        "provider_name": PROVIDER_NAME,
        "access_token": ACCESS_TOKEN,
    }
)

status_code = unlock_response.status_code
lock_data = unlock_response.json()
check("the partition is unlocked",
      status_code == 200 and lock_data["registered_object"]["state"] == "unlocked",
      unlock_response)

# Check Readiness (after unlock), and over a longer interval than is registered.
response = requests.get(
    urljoin(WEB_SERVICE_URL, f'sources/{SOURCE_NAME}/check_readiness'),
    params={
        "source_name": str(SOURCE_NAME),
        "start": str(PARTITION_START),
        "end": str(PARTITION_END),
    }
)

status_code = response.status_code
data = response.json()
check("ready after unlock", status_code == 200 and data["is_ready"] is True, response)

response = requests.get(
    urljoin(WEB_SERVICE_URL, f'sources/{SOURCE_NAME}/check_readiness'),
    params={"start": str(PARTITION_START), "end": str(PARTITION_END + timedelta(hours=1))},
)
data = response.json()
check("not ready where no partition covers the interval",
      data["is_ready"] is False and "no partition covers" in data["message"], response)
print("all seed examples passed")
# For the caller to check that the token never reached ferry's logs.
print(f"token: {ACCESS_TOKEN}")
