# Sourced by the scripts that build Kubernetes binaries from tools/kube:
# sets kube_version (the pinned k8s.io/kubernetes) and kube_ldflags, which
# stamp that version into the binaries as Kubernetes' release builds do. A
# build from the module proxy otherwise reports v0.0.0-master, which the
# chart's kubeVersion constraint (and any client that checks the server's
# version) refuses. Link-time only: no package is recompiled.
# Needs $root, the repository's root.
kube_version=$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" {print $3}' "$root/tools/kube/go.mod")
kube_ldflags() {
	local pkg=k8s.io/component-base/version major minor
	major=${kube_version#v}
	minor=${major#*.}
	echo "-X $pkg.gitVersion=$kube_version -X $pkg.gitMajor=${major%%.*} -X $pkg.gitMinor=${minor%%.*} -X $pkg.gitTreeState=clean"
}
