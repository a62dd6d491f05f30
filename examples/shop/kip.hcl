# The example stack: a shop backed by PostgreSQL, a Valkey cache, NATS for events and an S3 bucket for images.

variable "pg_version" {
  type        = string
  default     = "16"
  description = "PostgreSQL major to run."
}

locals {
  app = "shop"
}

postgres "main" {
  version  = var.pg_version
  settings = { work_mem = "8MB" }

  role "app" {
    login = true
  }

  database "shop" {
    owner      = "app"
    extensions = ["pgcrypto"]
  }

  grant {
    role       = "app"
    database   = "shop"
    privileges = ["ALL"]
  }
}

valkey "cache" {
  version   = "9"
  maxmemory = "64mb"
}

nats "events" {
  version = "2"

  stream "ORDERS" {
    subjects = ["orders.>"]
  }
}

s3 "assets" {
  version = "4"

  bucket "images" {
    versioning = true
  }
}

process "web" {
  command = ["./bin/web", "--name", local.app]
  env = {
    DATABASE_URL = postgres.main.database.shop.url
    REDIS_URL    = valkey.cache.url
    NATS_URL     = nats.events.url
    S3_ENDPOINT  = s3.assets.endpoint
  }
}

output "database_url" {
  value = postgres.main.database.shop.url
}
