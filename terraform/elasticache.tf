# The stack's two Redis stores (modules/redis_group: Multi-AZ failover, encrypted, AUTH, URL as a secret).
resource "aws_elasticache_subnet_group" "main" {
  name       = local.name
  subnet_ids = aws_subnet.private[*].id
}

# The API's online user state: recent clicks per user, TTL-bounded, a cache (evicting is fine).
module "state_redis" {
  source                   = "./modules/redis_group"
  id                       = "${local.name}-state"
  description              = "newsrec online user state"
  node_type                = "cache.t4g.medium"
  parameter_group_name     = "default.redis7"
  num_cache_clusters       = var.az_count
  subnet_group_name        = aws_elasticache_subnet_group.main.name
  security_group_ids       = [aws_security_group.data.id]
  kms_key_arn              = aws_kms_key.main.arn
  log_group_name           = aws_cloudwatch_log_group.redis.name
  snapshot_retention_limit = 3
  secret_name              = "${local.name}/redis-url"
  secret_description       = "rediss:// URL with the AUTH token of the online user-state store"
}

# The users' state of each hourly serving index (params serve.user_store_url, pipelines/user_store.py): the
# hourly DAG's refresh_index writes a version's readers here before it publishes the version, and each API
# request reads its reader with one GET. A missing user would be served as a stranger, so this Redis never
# evicts (its own parameter group: default.redis7 evicts keys with a TTL, which these have). Size: ~1.6 GB
# per million users per version, two versions while the replicas swap (docs/deployment.md). Its URL is under
# the Airflow variables prefix, which the MWAA execution role may read (mwaa/startup.sh exports it).
resource "aws_elasticache_parameter_group" "users" {
  name        = "${local.name}-users"
  family      = "redis7"
  description = "newsrec users' state: never evict"

  parameter {
    name  = "maxmemory-policy"
    value = "noeviction"
  }
}

module "users_redis" {
  source               = "./modules/redis_group"
  id                   = "${local.name}-users"
  description          = "newsrec users' state of the hourly serving index"
  node_type            = var.users_store_node_type
  parameter_group_name = aws_elasticache_parameter_group.users.name
  num_cache_clusters   = var.az_count
  subnet_group_name    = aws_elasticache_subnet_group.main.name
  security_group_ids   = [aws_security_group.data.id]
  kms_key_arn          = aws_kms_key.main.arn
  log_group_name       = aws_cloudwatch_log_group.redis.name
  # every version is rewritten within the hour by refresh_index: a snapshot is a fast restart, not a backup
  snapshot_retention_limit = 1
  secret_name              = "${local.name}/airflow/variables/user_store_url"
  secret_description       = "rediss:// URL with the AUTH token of the users' state store (serve.user_store_url)"
}

# Addresses of the online store before it became a module: an existing stack keeps its Redis and secret.
moved {
  from = aws_elasticache_replication_group.state
  to   = module.state_redis.aws_elasticache_replication_group.this
}

moved {
  from = random_password.redis_auth
  to   = module.state_redis.random_password.auth
}

moved {
  from = aws_secretsmanager_secret.redis_url
  to   = module.state_redis.aws_secretsmanager_secret.url
}

moved {
  from = aws_secretsmanager_secret_version.redis_url
  to   = module.state_redis.aws_secretsmanager_secret_version.url
}

resource "aws_cloudwatch_log_group" "redis" {
  name              = "/${local.name}/redis"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.main.arn
}
