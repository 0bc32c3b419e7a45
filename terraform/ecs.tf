# ECS on Fargate: the API (behind the ALB, deployed blue/green by CodeDeploy), the dashboard (behind the
# ALB) and the MLflow server (private, reached by name through Cloud Map); the Dask cluster is in dask.tf. Tasks run in the private
# subnets with no public IP, read-only root filesystems, and secrets injected from Secrets Manager.
locals {
  image = { for name, repo in aws_ecr_repository.images : name => "${repo.repository_url}:${var.image_tag}" }

  mlflow_url = "http://mlflow.${aws_service_discovery_private_dns_namespace.main.name}:5000"
  # where refresh_index mirrors the hourly serving index and the API tasks read it (params refresh.publish_uri)
  serving_index_uri = "s3://${local.bucket["artifacts"].id}/serving_index"

  log_groups = ["api", "dashboard", "mlflow", "dask-scheduler", "dask-worker"]

  log_config = {
    for name in local.log_groups : name => {
      logDriver = "awslogs"
      options = {
        awslogs-group         = aws_cloudwatch_log_group.service[name].name
        awslogs-region        = var.region
        awslogs-stream-prefix = name
      }
    }
  }

  # The API's Prometheus metrics, scraped by a collector sidecar and published to CloudWatch (EMF) under
  # the newsrec/api namespace, where the fallback-rate alarm reads them.
  otel_config = yamlencode({
    receivers = {
      prometheus = {
        config = {
          scrape_configs = [{
            job_name        = "newsrec-api"
            scrape_interval = "30s"
            static_configs  = [{ targets = ["localhost:8000"] }]
          }]
        }
      }
    }
    exporters = {
      awsemf = {
        namespace               = "newsrec/api"
        log_group_name          = aws_cloudwatch_log_group.service["api"].name
        dimension_rollup_option = "ZeroAndSingleDimensionRollup"
      }
    }
    service = {
      pipelines = {
        metrics = { receivers = ["prometheus"], exporters = ["awsemf"] }
      }
    }
  })
}

resource "aws_ecs_cluster" "main" {
  name = local.name

  setting {
    name  = "containerInsights"
    value = "enhanced"
  }
}

resource "aws_ecs_cluster_capacity_providers" "main" {
  cluster_name       = aws_ecs_cluster.main.name
  capacity_providers = ["FARGATE"]

  default_capacity_provider_strategy {
    capacity_provider = "FARGATE"
    weight            = 1
  }
}

resource "aws_service_discovery_private_dns_namespace" "main" {
  name = "${var.project}.internal"
  vpc  = aws_vpc.main.id
}

resource "aws_service_discovery_service" "mlflow" {
  name = "mlflow"

  dns_config {
    namespace_id = aws_service_discovery_private_dns_namespace.main.id
    dns_records {
      type = "A"
      ttl  = 10
    }
  }
}

resource "aws_cloudwatch_log_group" "service" {
  for_each          = toset(local.log_groups)
  name              = "/${local.name}/${each.key}"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.main.arn
}

# --- API ----------------------------------------------------------------------------------------------

resource "aws_ecs_task_definition" "api" {
  family                   = "${local.name}-api"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = 1024
  memory                   = 4096
  execution_role_arn       = aws_iam_role.task_execution.arn
  task_role_arn            = aws_iam_role.api.arn

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = "X86_64"
  }

  # Writable scratch space beside a read-only root filesystem: impression/click logs and temp files.
  volume {
    name = "logs"
  }
  volume {
    name = "tmp"
  }

  container_definitions = jsonencode([
    {
      name                   = "api"
      image                  = local.image["api"]
      essential              = true
      readonlyRootFilesystem = true
      portMappings           = [{ containerPort = 8000, protocol = "tcp" }]
      environment = [
        { name = "NEWSREC__MLFLOW__TRACKING_URI", value = local.mlflow_url },
        { name = "NEWSREC__SERVE__CLOCK", value = "wall" },
        # facing the internet: keys for personal data and writes, and a per-client rate limit
        { name = "NEWSREC__SERVE__AUTH", value = "true" },
        { name = "NEWSREC__SERVE__RATE_LIMIT_PER_MINUTE", value = "6000" },
        # the hourly serving index, as refresh_index mirrors it; copied to the task's own disk (paths.data)
        { name = "NEWSREC__REFRESH__PUBLISH_URI", value = local.serving_index_uri },
        { name = "NEWSREC__PATHS__DATA", value = "/tmp/newsrec-data" },
      ]
      secrets = [
        { name = "NEWSREC__SERVE__REDIS_URL", valueFrom = module.state_redis.secret_arn },
        { name = "NEWSREC__SERVE__USER_STORE_URL", valueFrom = module.users_redis.secret_arn },
        { name = "NEWSREC_API_KEYS", valueFrom = aws_secretsmanager_secret.api_keys.arn },
      ]
      mountPoints = [
        { sourceVolume = "logs", containerPath = "/app/logs" },
        { sourceVolume = "tmp", containerPath = "/tmp" },
      ]
      healthCheck = {
        command     = ["CMD", "python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status != 200)"]
        interval    = 15
        timeout     = 5
        retries     = 3
        startPeriod = 120
      }
      logConfiguration = local.log_config["api"]
    },
    {
      name                   = "metrics"
      image                  = "public.ecr.aws/aws-observability/aws-otel-collector:v0.43.3"
      essential              = false
      readonlyRootFilesystem = true
      environment            = [{ name = "AOT_CONFIG_CONTENT", value = local.otel_config }]
      logConfiguration       = local.log_config["api"]
    },
  ])
}

resource "aws_ecs_service" "api" {
  name                              = "api"
  cluster                           = aws_ecs_cluster.main.id
  task_definition                   = aws_ecs_task_definition.api.arn
  desired_count                     = var.api_min_tasks
  launch_type                       = "FARGATE"
  platform_version                  = "LATEST"
  health_check_grace_period_seconds = 120
  propagate_tags                    = "SERVICE"
  enable_execute_command            = false

  deployment_controller {
    type = "CODE_DEPLOY"
  }

  network_configuration {
    subnets          = aws_subnet.private[*].id
    security_groups  = [aws_security_group.services.id]
    assign_public_ip = false
  }

  load_balancer {
    target_group_arn = aws_lb_target_group.api["blue"].arn
    container_name   = "api"
    container_port   = 8000
  }

  # CodeDeploy owns which task definition and target group are live; autoscaling owns the count.
  lifecycle {
    ignore_changes = [task_definition, load_balancer, desired_count]
  }

  depends_on = [aws_lb_listener.https]
}

# --- dashboard ------------------------------------------------------------------------------------------

resource "aws_ecs_task_definition" "dashboard" {
  family                   = "${local.name}-dashboard"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = 512
  memory                   = 2048
  execution_role_arn       = aws_iam_role.task_execution.arn
  task_role_arn            = aws_iam_role.dashboard.arn

  volume {
    name = "tmp"
  }

  container_definitions = jsonencode([{
    name                   = "dashboard"
    image                  = local.image["dashboard"]
    essential              = true
    readonlyRootFilesystem = true
    portMappings           = [{ containerPort = 8501, protocol = "tcp" }]
    environment = [
      # The dashboard is a client of the API, through the same HTTPS endpoint the readers use.
      { name = "NEWSREC__DASHBOARD__API_URL", value = "https://api.${var.domain_name}" },
      { name = "HOME", value = "/tmp" },
    ]
    secrets = [
      { name = "NEWSREC_DASHBOARD_API_KEY", valueFrom = aws_secretsmanager_secret.dashboard_api_key.arn },
    ]
    mountPoints = [{ sourceVolume = "tmp", containerPath = "/tmp" }]
    healthCheck = {
      command     = ["CMD", "python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8501/_stcore/health', timeout=4).status != 200)"]
      interval    = 30
      timeout     = 5
      retries     = 3
      startPeriod = 60
    }
    logConfiguration = local.log_config["dashboard"]
  }])
}

resource "aws_ecs_service" "dashboard" {
  name             = "dashboard"
  cluster          = aws_ecs_cluster.main.id
  task_definition  = aws_ecs_task_definition.dashboard.arn
  desired_count    = 1
  launch_type      = "FARGATE"
  platform_version = "LATEST"
  propagate_tags   = "SERVICE"

  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  network_configuration {
    subnets          = aws_subnet.private[*].id
    security_groups  = [aws_security_group.services.id]
    assign_public_ip = false
  }

  load_balancer {
    target_group_arn = aws_lb_target_group.dashboard.arn
    container_name   = "dashboard"
    container_port   = 8501
  }

  lifecycle {
    ignore_changes = [desired_count]
  }

  depends_on = [aws_lb_listener_rule.dashboard]
}

# --- MLflow ---------------------------------------------------------------------------------------------

resource "aws_ecs_task_definition" "mlflow" {
  family                   = "${local.name}-mlflow"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = 512
  memory                   = 2048
  execution_role_arn       = aws_iam_role.task_execution.arn
  task_role_arn            = aws_iam_role.mlflow.arn

  volume {
    name = "tmp"
  }

  container_definitions = jsonencode([{
    name                   = "mlflow"
    image                  = local.image["mlflow"]
    essential              = true
    readonlyRootFilesystem = true
    portMappings           = [{ containerPort = 5000, protocol = "tcp" }]
    environment = [
      # The password comes from RDS's own secret through PGPASSWORD (libpq), so it never sits in a URI.
      { name = "MLFLOW_BACKEND_STORE_URI", value = "postgresql+psycopg2://mlflow@${aws_db_instance.mlflow.address}:5432/mlflow?sslmode=require" },
      { name = "MLFLOW_ARTIFACTS_DESTINATION", value = "s3://${local.bucket["artifacts"].id}/mlflow" },
      { name = "MLFLOW_SERVER_ALLOWED_HOSTS", value = "mlflow.${aws_service_discovery_private_dns_namespace.main.name}:5000,mlflow.${aws_service_discovery_private_dns_namespace.main.name}" },
      { name = "HOME", value = "/tmp" },
    ]
    secrets = [
      { name = "PGPASSWORD", valueFrom = "${aws_db_instance.mlflow.master_user_secret[0].secret_arn}:password::" },
    ]
    mountPoints = [{ sourceVolume = "tmp", containerPath = "/tmp" }]
    healthCheck = {
      command     = ["CMD", "python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:5000/health', timeout=4).status != 200)"]
      interval    = 15
      timeout     = 5
      retries     = 5
      startPeriod = 60
    }
    logConfiguration = local.log_config["mlflow"]
  }])
}

resource "aws_ecs_service" "mlflow" {
  name             = "mlflow"
  cluster          = aws_ecs_cluster.main.id
  task_definition  = aws_ecs_task_definition.mlflow.arn
  desired_count    = 2
  launch_type      = "FARGATE"
  platform_version = "LATEST"
  propagate_tags   = "SERVICE"

  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  network_configuration {
    subnets          = aws_subnet.private[*].id
    security_groups  = [aws_security_group.services.id]
    assign_public_ip = false
  }

  service_registries {
    registry_arn = aws_service_discovery_service.mlflow.arn
  }
}
