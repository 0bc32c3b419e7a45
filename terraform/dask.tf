# The Dask cluster the heavy batch steps run on when params `dask.scheduler` names it (docs/deployment.md,
# "Production shape"): one scheduler, found at dask-scheduler.<project>.internal:8786 (Cloud Map), and
# var.dask_workers workers, all from the pipelines image, so client, scheduler and workers run the same dask,
# distributed and pipelines code. Steps hand the cluster paths, not frames: the workers mount the data root, an
# encrypted EFS file system, read-only through an access point. var.dask_workers = 0 (the default) runs no task
# at all: at Globo's scale the steps fit one process.
locals {
  dask_enabled           = var.dask_workers > 0
  dask_scheduler_address = "tcp://dask-scheduler.${aws_service_discovery_private_dns_namespace.main.name}:8786"
  # The nanny restarts a worker that passes 95% of --memory-limit; the task keeps 1 GiB above it for the nanny
  # and the interpreter.
  dask_worker_memory_limit = "${var.dask_worker_memory - 1024}MiB"
  dask_port_ranges = {
    "Dask scheduler, workers and nannies" = [8786, 8790]
    "LightGBM's training network"         = [32768, 60999]
  }
}

# --- network ----------------------------------------------------------------------------------------------

resource "aws_security_group" "dask" {
  name        = "${local.name}-dask"
  description = "Dask scheduler and workers, and the clients that submit to them"
  vpc_id      = aws_vpc.main.id
}

# Among the cluster's tasks (and a client in this group): the scheduler (8786), its HTTP port (8787), the workers
# and nannies (8788-8790), and LightGBM's training network, whose ports each worker takes from Linux's ephemeral
# range when training starts. Clients never dial workers: distributed relays a client's gathers and scatters
# through the scheduler.
resource "aws_vpc_security_group_ingress_rule" "dask_cluster" {
  for_each                     = local.dask_port_ranges
  security_group_id            = aws_security_group.dask.id
  description                  = "${each.key} among the Dask tasks"
  referenced_security_group_id = aws_security_group.dask.id
  from_port                    = each.value[0]
  to_port                      = each.value[1]
  ip_protocol                  = "tcp"
}

resource "aws_vpc_security_group_egress_rule" "dask_cluster" {
  for_each                     = local.dask_port_ranges
  security_group_id            = aws_security_group.dask.id
  description                  = "${each.key} among the Dask tasks"
  referenced_security_group_id = aws_security_group.dask.id
  from_port                    = each.value[0]
  to_port                      = each.value[1]
  ip_protocol                  = "tcp"
}

# The scheduler's HTTP port (health, Prometheus /metrics, the /info pages): from the operators' networks only,
# never from the internet (the tasks have no public address either).
resource "aws_vpc_security_group_ingress_rule" "dask_dashboard" {
  for_each          = toset(var.dask_dashboard_cidrs)
  security_group_id = aws_security_group.dask.id
  description       = "Dask scheduler dashboard from ${each.key}"
  cidr_ipv4         = each.key
  from_port         = 8787
  to_port           = 8787
  ip_protocol       = "tcp"
}

resource "aws_vpc_security_group_egress_rule" "dask_https" {
  security_group_id = aws_security_group.dask.id
  description       = "HTTPS to ECR, CloudWatch Logs and the EFS mount helper's AWS calls"
  cidr_ipv4         = "0.0.0.0/0"
  from_port         = 443
  to_port           = 443
  ip_protocol       = "tcp"
}

resource "aws_vpc_security_group_egress_rule" "dask_efs" {
  security_group_id            = aws_security_group.dask.id
  description                  = "The data root (EFS, NFS over TLS)"
  referenced_security_group_id = aws_security_group.efs.id
  from_port                    = 2049
  to_port                      = 2049
  ip_protocol                  = "tcp"
}

resource "aws_security_group" "efs" {
  name        = "${local.name}-efs"
  description = "The data root on EFS: NFS from the Dask tasks only"
  vpc_id      = aws_vpc.main.id
}

resource "aws_vpc_security_group_ingress_rule" "efs_from_dask" {
  security_group_id            = aws_security_group.efs.id
  description                  = "NFS from the Dask tasks"
  referenced_security_group_id = aws_security_group.dask.id
  from_port                    = 2049
  to_port                      = 2049
  ip_protocol                  = "tcp"
}

resource "aws_service_discovery_service" "dask_scheduler" {
  name = "dask-scheduler"

  dns_config {
    namespace_id = aws_service_discovery_private_dns_namespace.main.id
    dns_records {
      type = "A"
      ttl  = 10
    }
  }
}

# --- the data root ------------------------------------------------------------------------------------------

# No AWS Backup plan on purpose: the data root holds derived data, rebuilt by `dvc repro` from the raw drops, and
# a backup would keep erased users' clicks out of forget-user's reach.
resource "aws_efs_file_system" "data" {
  creation_token   = "${local.name}-data"
  encrypted        = true
  kms_key_id       = aws_kms_key.main.arn
  performance_mode = "generalPurpose"
  throughput_mode  = "elastic"
  tags             = { Name = "${local.name}-data" }
}

resource "aws_efs_mount_target" "data" {
  count           = var.az_count
  file_system_id  = aws_efs_file_system.data.id
  subnet_id       = aws_subnet.private[count.index].id
  security_groups = [aws_security_group.efs.id]
}

# Every client lands in /newsrec-data as the image's user (uid 10001), whatever uid it runs as.
resource "aws_efs_access_point" "data" {
  file_system_id = aws_efs_file_system.data.id
  posix_user {
    uid = 10001
    gid = 10001
  }
  root_directory {
    path = "/newsrec-data"
    creation_info {
      owner_uid   = 10001
      owner_gid   = 10001
      permissions = "0750"
    }
  }
}

data "aws_iam_policy_document" "efs_data" {
  statement {
    sid       = "TlsOnly"
    effect    = "Deny"
    actions   = ["elasticfilesystem:ClientMount", "elasticfilesystem:ClientWrite", "elasticfilesystem:ClientRootAccess"]
    resources = [aws_efs_file_system.data.arn]
    principals {
      type        = "AWS"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
  statement {
    sid       = "ThroughTheAccessPointOnly"
    effect    = "Deny"
    actions   = ["elasticfilesystem:ClientMount", "elasticfilesystem:ClientWrite", "elasticfilesystem:ClientRootAccess"]
    resources = [aws_efs_file_system.data.arn]
    principals {
      type        = "AWS"
      identifiers = ["*"]
    }
    condition {
      test     = "StringNotEquals"
      variable = "elasticfilesystem:AccessPointArn"
      values   = [aws_efs_access_point.data.arn]
    }
  }
}

resource "aws_efs_file_system_policy" "data" {
  file_system_id = aws_efs_file_system.data.id
  policy         = data.aws_iam_policy_document.efs_data.json
}

# --- scheduler -------------------------------------------------------------------------------------------

resource "aws_ecs_task_definition" "dask_scheduler" {
  family                   = "${local.name}-dask-scheduler"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = 1024
  memory                   = var.dask_scheduler_memory
  execution_role_arn       = aws_iam_role.task_execution.arn
  task_role_arn            = aws_iam_role.dask_scheduler.arn

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = "X86_64"
  }

  volume {
    name = "tmp"
  }

  container_definitions = jsonencode([{
    name                   = "dask-scheduler"
    image                  = local.image["pipelines"]
    essential              = true
    readonlyRootFilesystem = true
    command                = ["dask", "scheduler", "--host", "0.0.0.0", "--port", "8786", "--dashboard-address", ":8787"]
    portMappings = [
      { containerPort = 8786, protocol = "tcp" },
      { containerPort = 8787, protocol = "tcp" },
    ]
    environment = [{ name = "HOME", value = "/tmp" }]
    mountPoints = [{ sourceVolume = "tmp", containerPath = "/tmp" }]
    healthCheck = {
      command     = ["CMD", "python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8787/health', timeout=4).status != 200)"]
      interval    = 15
      timeout     = 5
      retries     = 5
      startPeriod = 30
    }
    logConfiguration = local.log_config["dask-scheduler"]
  }])
}

resource "aws_ecs_service" "dask_scheduler" {
  name             = "dask-scheduler"
  cluster          = aws_ecs_cluster.main.id
  task_definition  = aws_ecs_task_definition.dask_scheduler.arn
  desired_count    = local.dask_enabled ? 1 : 0
  launch_type      = "FARGATE"
  platform_version = "LATEST"
  propagate_tags   = "SERVICE"

  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  network_configuration {
    subnets          = aws_subnet.private[*].id
    security_groups  = [aws_security_group.dask.id]
    assign_public_ip = false
  }

  service_registries {
    registry_arn = aws_service_discovery_service.dask_scheduler.arn
  }
}

# --- workers ---------------------------------------------------------------------------------------------

resource "aws_ecs_task_definition" "dask_worker" {
  family                   = "${local.name}-dask-worker"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = var.dask_worker_cpu
  memory                   = var.dask_worker_memory
  execution_role_arn       = aws_iam_role.task_execution.arn
  task_role_arn            = aws_iam_role.dask_worker.arn

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = "X86_64"
  }

  # Spill space: the task's ephemeral storage (20 GiB by default) under /tmp.
  volume {
    name = "tmp"
  }

  volume {
    name = "data"
    efs_volume_configuration {
      file_system_id     = aws_efs_file_system.data.id
      transit_encryption = "ENABLED"
      authorization_config {
        access_point_id = aws_efs_access_point.data.id
        iam             = "ENABLED"
      }
    }
  }

  container_definitions = jsonencode([{
    name                   = "dask-worker"
    image                  = local.image["pipelines"]
    essential              = true
    readonlyRootFilesystem = true
    # One worker process per task, one thread per vCPU (LightGBM's num_threads becomes each worker's threads).
    command = [
      "dask", "worker", local.dask_scheduler_address,
      "--nworkers", "1", "--nthreads", tostring(floor(var.dask_worker_cpu / 1024)),
      "--memory-limit", local.dask_worker_memory_limit,
      "--worker-port", "8788", "--nanny-port", "8789", "--dashboard-address", ":8790",
      "--local-directory", "/tmp/dask-worker",
    ]
    portMappings = [
      { containerPort = 8788, protocol = "tcp" },
      { containerPort = 8789, protocol = "tcp" },
    ]
    # pipelines/cluster.py WORKER_ENVIRON: without it glibc maps every allocation over 128 KiB afresh in the
    # worker processes the nanny starts.
    environment = [
      { name = "HOME", value = "/tmp" },
      { name = "MALLOC_MMAP_THRESHOLD_", value = "33554432" },
    ]
    mountPoints = [
      { sourceVolume = "tmp", containerPath = "/tmp" },
      # The client's data root at the client's path; the per-partition work only reads it.
      { sourceVolume = "data", containerPath = "/app/data", readOnly = true },
    ]
    healthCheck = {
      command     = ["CMD", "python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8790/health', timeout=4).status != 200)"]
      interval    = 15
      timeout     = 5
      retries     = 5
      startPeriod = 60
    }
    logConfiguration = local.log_config["dask-worker"]
  }])
}

# A fixed count, not autoscaled: a step fixes its partitions (one per worker) and LightGBM its machine list when
# it starts, so a worker added mid-step idles and a worker removed mid-training fails the step.
resource "aws_ecs_service" "dask_worker" {
  name             = "dask-worker"
  cluster          = aws_ecs_cluster.main.id
  task_definition  = aws_ecs_task_definition.dask_worker.arn
  desired_count    = var.dask_workers
  launch_type      = "FARGATE"
  platform_version = "LATEST"
  propagate_tags   = "SERVICE"

  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  network_configuration {
    subnets          = aws_subnet.private[*].id
    security_groups  = [aws_security_group.dask.id]
    assign_public_ip = false
  }

  depends_on = [aws_ecs_service.dask_scheduler, aws_efs_mount_target.data]
}
