# The quickstart: a PostgreSQL 16 database, a Valkey cache, a migration that runs once, and a web server that
# uses both. `kip apply` brings PostgreSQL and Valkey up in parallel, runs the migration when the database is
# ready, and starts the web server when the migration has succeeded and the cache is ready.

variable "web_port" {
  type        = number
  default     = 8080
  description = "The web server's port on 127.0.0.1."
}

postgres "main" {
  version  = "16"
  settings = { work_mem = "8MB" }

  role "app" { login = true }

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
  version          = "9"
  maxmemory        = "64mb"
  maxmemory_policy = "allkeys-lru"

  user "web" {
    commands = ["+@all", "-@dangerous"]
    keys     = ["shop:*"]
  }
}

# A one-shot job: runs once, and again only when its configuration changes.
process "migrate" {
  command = ["./migrate.sh"]
  env     = { DATABASE_URL = postgres.main.database.shop.url }
  restart = "no"
}

process "web" {
  command = ["python3", "web.py"]
  port    = var.web_port
  env = {
    PORT         = var.web_port
    DATABASE_URL = postgres.main.database.shop.url
    CACHE_URL    = valkey.cache.user.web.url
  }

  wait_for "process.migrate" {
    condition = "succeeded"
  }

  ready {
    http     = "http://127.0.0.1:${var.web_port}/healthz"
    interval = "50ms"
  }
}

output "database_url" {
  value = postgres.main.database.shop.url
}

output "web_url" {
  value = "http://127.0.0.1:${var.web_port}/"
}
