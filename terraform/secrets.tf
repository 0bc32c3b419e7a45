# Generated secrets live in Secrets Manager (KMS-encrypted) and reach tasks as ECS secrets, never as plain
# environment values in the task definition. RDS manages its own master password (manage_master_user_password).
resource "random_password" "redis_auth" {
  length  = 48
  special = false
}

resource "aws_secretsmanager_secret" "redis_url" {
  #checkov:skip=CKV2_AWS_57:ElastiCache AUTH tokens rotate through modify-replication-group with ROTATE, run from the runbook (docs/deployment.md); a rotation Lambda for it is not worth its attack surface.
  name                    = "${local.name}/redis-url"
  description             = "rediss:// URL with the AUTH token of the online user-state store"
  kms_key_id              = aws_kms_key.main.arn
  recovery_window_in_days = 7
}

resource "aws_secretsmanager_secret_version" "redis_url" {
  secret_id     = aws_secretsmanager_secret.redis_url.id
  secret_string = "rediss://:${random_password.redis_auth.result}@${aws_elasticache_replication_group.state.primary_endpoint_address}:6379/0"
}
