"""Real-format CI log excerpts (GitHub Actions timestamp prefixes, GitLab traces) that push image digests.

The lines follow what the tools print: the docker CLI, BuildKit's plain progress, docker/build-push-action's
output groups, go-containerregistry (crane) and skopeo. Digests are made up; `digest(c)` builds one.
"""

from __future__ import annotations


def digest(char: str) -> str:
    return "sha256:" + char * 64


def github(lines: str, start: str = "2021-04-01T10:00:00.1234567Z") -> str:
    """Every line prefixed the way GitHub Actions stores it: `2021-04-01T10:00:00.1234567Z `."""
    return "\n".join(f"{start} {line}" for line in lines.strip("\n").split("\n")) + "\n"


def gitlab(lines: str) -> str:
    """A GitLab trace with FF_TIMESTAMPS: `<RFC 3339> 00O ` before each line; sections and ANSI colours."""
    out = []
    for line in lines.strip("\n").split("\n"):
        out.append(f"2024-05-14T11:19:20.000000Z 00O {line}")
    return "\n".join(out) + "\n"


DOCKER_PUSH = f"""
##[group]Run docker push openzaak/open-zaak:1.3.4
docker push openzaak/open-zaak:1.3.4
shell: /usr/bin/bash -e {{0}}
##[endgroup]
The push refers to repository [docker.io/openzaak/open-zaak]
5f70bf18a086: Preparing
a3b2c1d0e9f8: Pushed
5f70bf18a086: Layer already exists
1.3.4: digest: {digest("a")} size: 2203
"""

# A pull also prints a digest: the base image's, never ours.
DOCKER_PULL = f"""
1.27: Pulling from library/nginx
Digest: {digest("f")}
Status: Downloaded newer image for nginx:1.27
docker.io/library/nginx:1.27
docker.io/library/nginx@{digest("e")}
"""

BUILDKIT_PUSH = f"""
#14 exporting to image
#14 exporting layers
#14 exporting layers 2.1s done
#14 exporting manifest {digest("1")} done
#14 exporting config {digest("2")} done
#14 exporting attestation manifest {digest("3")} done
#14 exporting manifest {digest("4")} done
#14 exporting config {digest("5")} done
#14 exporting attestation manifest {digest("6")} done
#14 exporting manifest list {digest("b")} 0.0s done
#14 naming to ghcr.io/org/app:2.0 done
#14 naming to ghcr.io/org/app:latest done
#14 pushing layers
#14 pushing layers 3.2s done
#14 pushing manifest for ghcr.io/org/app:2.0@{digest("b")}
#14 pushing manifest for ghcr.io/org/app:2.0@{digest("b")} 0.6s done
#14 DONE 6.4s
"""

# `--load` on the docker driver: exported and named locally, never pushed.
BUILDKIT_LOAD = f"""
#9 exporting to image
#9 exporting manifest {digest("7")} done
#9 naming to docker.io/library/scratch-test:dev done
#9 unpacking to docker.io/library/scratch-test:dev 0.1s done
#9 DONE 0.3s
"""

BUILD_PUSH_ACTION = f"""
##[group]Run docker/build-push-action@v5
with:
  push: true
  tags: ghcr.io/org/app:3.1
##[endgroup]
#18 pushing manifest for ghcr.io/org/app:3.1@{digest("c")} 0.4s done
##[group]ImageID
{digest("9")}
##[endgroup]
##[group]Digest
{digest("c")}
##[endgroup]
##[group]Metadata
{{
  "buildx.build.ref": "builder-1/builder-10/k3j2",
  "containerimage.config.digest": "{digest("9")}",
  "containerimage.descriptor": {{
    "mediaType": "application/vnd.oci.image.index.v1+json",
    "digest": "{digest("c")}",
    "size": 856
  }},
  "containerimage.digest": "{digest("c")}",
  "image.name": "ghcr.io/org/app:3.1,ghcr.io/org/app:stable"
}}
##[endgroup]
"""

CRANE_COPY = f"""
##[group]Run crane copy ghcr.io/org/app:4.0 registry.example.com/mirror/app:4.0
crane copy ghcr.io/org/app:4.0 registry.example.com/mirror/app:4.0
##[endgroup]
2021/04/01 10:00:01 Copying from ghcr.io/org/app:4.0 to registry.example.com/mirror/app:4.0
2021/04/01 10:00:02 existing blob: {digest("8")}
2021/04/01 10:00:03 registry.example.com/mirror/app:4.0: digest: {digest("d")} size: 1024
"""

CRANE_PUSH = f"""
$ crane push image.tar registry.example.com/team/tool:0.9
2021/04/01 10:00:02 pushed blob: {digest("8")}
registry.example.com/team/tool@{digest("0")}
"""

SKOPEO_COPY = f"""
+ skopeo copy --digestfile digest.txt oci-archive:image.tar docker://quay.io/org/cli:5.2
Getting image source signatures
Copying blob sha256:{"8" * 64}
Writing manifest to image destination
+ cat digest.txt
{digest("5")}
"""
