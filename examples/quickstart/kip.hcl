# The quickstart: a PostgreSQL 16 with an application role and database, converged by `kip apply`.

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

output "database_url" {
  value = postgres.main.database.shop.url
}
