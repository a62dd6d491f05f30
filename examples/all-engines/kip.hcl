# Every engine kip runs, in one apply: PostgreSQL, Valkey, MariaDB, NATS with JetStream, an S3 store, and an app of
# your own that uses all five. `kip apply` starts the five engines in parallel, converges their objects, then starts
# the app with their addresses and credentials in its environment, once each engine is ready.

variable "app_port" {
  type        = number
  default     = 8090
  description = "The app's port on 127.0.0.1."
}

postgres "main" {
  version = "16"

  role "app" { login = true }

  database "shop" { owner = "app" }
}

valkey "cache" {
  version   = "9"
  maxmemory = "64mb"

  user "app" {
    commands = ["+@all", "-@dangerous"]
    keys     = ["app:*"]
  }
}

mariadb "legacy" {
  version = "10.11"

  database "billing" {}

  user "billing" {
    grant {
      on         = "billing.*"
      privileges = ["SELECT", "INSERT", "UPDATE", "DELETE"]
    }
  }
}

nats "bus" {
  version = "2"

  stream "ORDERS" {
    subjects = ["orders.>"]
    max_age  = "7d"
  }

  kv "sessions" {
    ttl = "30m"
  }
}

s3 "blobs" {
  version = "4"

  bucket "uploads" {
    versioning = true
  }
}

process "app" {
  command = ["python3", "app.py"]
  port    = var.app_port
  env = {
    PORT                  = var.app_port
    DATABASE_URL          = postgres.main.database.shop.url
    REDIS_URL             = valkey.cache.user.app.url
    MYSQL_URL             = mariadb.legacy.user.billing.url
    NATS_URL              = nats.bus.url
    NATS_TOKEN            = nats.bus.token
    AWS_ENDPOINT_URL_S3   = s3.blobs.endpoint
    AWS_ACCESS_KEY_ID     = s3.blobs.access_key
    AWS_SECRET_ACCESS_KEY = s3.blobs.secret_key
    AWS_REGION            = s3.blobs.region
    UPLOADS_BUCKET        = s3.blobs.bucket.uploads.name
  }

  ready {
    http     = "http://127.0.0.1:${var.app_port}/healthz"
    interval = "50ms"
  }
}

output "app_url" {
  value = "http://127.0.0.1:${var.app_port}/"
}
