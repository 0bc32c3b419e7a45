# Generated secrets live in Secrets Manager (KMS-encrypted) and reach tasks as ECS secrets, never as plain
# environment values in the task definition. RDS manages its own master password (manage_master_user_password);
# each Redis store's URL is made with it (modules/redis_group, elasticache.tf).

# The API's keys (serve.auth): one for the site's backend, one for the dashboard. Rotate by adding a key, moving
# the clients to it, then removing the old one (the API accepts every key in the list).
resource "random_password" "api_key" {
  for_each = toset(["site", "dashboard"])
  length   = 40
  special  = false
}

resource "aws_secretsmanager_secret" "api_keys" {
  #checkov:skip=CKV2_AWS_57:API keys rotate by the add-move-remove runbook above, not a rotation Lambda.
  name                    = "${local.name}/api-keys"
  description             = "comma-separated API keys the recommendation API accepts (serve.auth)"
  kms_key_id              = aws_kms_key.main.arn
  recovery_window_in_days = 7
}

resource "aws_secretsmanager_secret_version" "api_keys" {
  secret_id     = aws_secretsmanager_secret.api_keys.id
  secret_string = join(",", [for k in random_password.api_key : k.result])
}

resource "aws_secretsmanager_secret" "dashboard_api_key" {
  #checkov:skip=CKV2_AWS_57:rotated with api_keys (see above).
  name                    = "${local.name}/dashboard-api-key"
  description             = "the dashboard's key for the recommendation API"
  kms_key_id              = aws_kms_key.main.arn
  recovery_window_in_days = 7
}

resource "aws_secretsmanager_secret_version" "dashboard_api_key" {
  secret_id     = aws_secretsmanager_secret.dashboard_api_key.id
  secret_string = random_password.api_key["dashboard"].result
}

# The erasure register's key (`newsrec forget-user`, NEWSREC_ERASURE_KEY in pipelines/erasures.py): an HMAC key, so ids cannot be
# tested against the register without it. Every task that reads clicks needs it once anyone was erased, and
# it must never change afterwards (the register's tokens would stop matching), hence prevent_destroy. Under
# the Airflow variables prefix, which the MWAA execution role may read; mwaa/startup.sh exports it.
resource "random_password" "erasure_key" {
  length  = 64
  special = false
  lifecycle {
    prevent_destroy = true
  }
}

resource "aws_secretsmanager_secret" "erasure_key" {
  #checkov:skip=CKV2_AWS_57:Rotating this key would orphan every token in the erasure register; it is never rotated.
  name                    = "${local.name}/airflow/variables/erasure_key"
  description             = "HMAC key of the erasure register (NEWSREC_ERASURE_KEY)"
  kms_key_id              = aws_kms_key.main.arn
  recovery_window_in_days = 30
}

resource "aws_secretsmanager_secret_version" "erasure_key" {
  secret_id     = aws_secretsmanager_secret.erasure_key.id
  secret_string = random_password.erasure_key.result
}
