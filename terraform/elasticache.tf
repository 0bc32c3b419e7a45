# Redis for the API's online user state (recent clicks per user, TTL-bounded): a primary and a replica in
# different AZs with automatic failover, encrypted at rest (the stack's key) and in transit, AUTH required.
resource "aws_elasticache_subnet_group" "main" {
  name       = local.name
  subnet_ids = aws_subnet.private[*].id
}

resource "aws_elasticache_replication_group" "state" {
  replication_group_id = "${local.name}-state"
  description          = "newsrec online user state"
  engine               = "redis"
  engine_version       = "7.1"
  node_type            = "cache.t4g.medium"
  port                 = 6379
  parameter_group_name = "default.redis7"

  num_cache_clusters         = var.az_count
  automatic_failover_enabled = true
  multi_az_enabled           = true
  subnet_group_name          = aws_elasticache_subnet_group.main.name
  security_group_ids         = [aws_security_group.data.id]

  at_rest_encryption_enabled = true
  kms_key_id                 = aws_kms_key.main.arn
  transit_encryption_enabled = true
  auth_token                 = random_password.redis_auth.result

  snapshot_retention_limit   = 3
  snapshot_window            = "01:00-02:00"
  maintenance_window         = "sun:04:30-sun:05:30"
  auto_minor_version_upgrade = true

  log_delivery_configuration {
    destination      = aws_cloudwatch_log_group.redis.name
    destination_type = "cloudwatch-logs"
    log_format       = "json"
    log_type         = "slow-log"
  }
}

resource "aws_cloudwatch_log_group" "redis" {
  name              = "/${local.name}/redis"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.main.arn
}

# The users' state of each hourly serving index (params serve.user_store_url, pipelines/user_store.py): the
# hourly DAG's refresh_index writes a version's readers here before it publishes the version, and each API
# request reads its reader with one GET. A missing user would be served as a stranger, so this Redis never
# evicts (its own parameter group: default.redis7 evicts keys with a TTL, which these have). Size: ~1.6 GB
# per million users per version, two versions while the replicas swap (docs/deployment.md).
resource "aws_elasticache_parameter_group" "users" {
  name        = "${local.name}-users"
  family      = "redis7"
  description = "newsrec users' state: never evict"

  parameter {
    name  = "maxmemory-policy"
    value = "noeviction"
  }
}

resource "aws_elasticache_replication_group" "users" {
  replication_group_id = "${local.name}-users"
  description          = "newsrec users' state of the hourly serving index"
  engine               = "redis"
  engine_version       = "7.1"
  node_type            = var.users_store_node_type
  port                 = 6379
  parameter_group_name = aws_elasticache_parameter_group.users.name

  num_cache_clusters         = var.az_count
  automatic_failover_enabled = true
  multi_az_enabled           = true
  subnet_group_name          = aws_elasticache_subnet_group.main.name
  security_group_ids         = [aws_security_group.data.id]

  at_rest_encryption_enabled = true
  kms_key_id                 = aws_kms_key.main.arn
  transit_encryption_enabled = true
  auth_token                 = random_password.users_store_auth.result

  # every version is rewritten within the hour by refresh_index: a snapshot is a fast restart, not a backup
  snapshot_retention_limit   = 1
  snapshot_window            = "01:00-02:00"
  maintenance_window         = "sun:04:30-sun:05:30"
  auto_minor_version_upgrade = true

  log_delivery_configuration {
    destination      = aws_cloudwatch_log_group.redis.name
    destination_type = "cloudwatch-logs"
    log_format       = "json"
    log_type         = "slow-log"
  }
}
