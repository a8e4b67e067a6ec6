package spc

import "k8s.io/apimachinery/pkg/runtime"

// Hand-written deep copies, the equivalent of deepcopy-gen's output. Every
// slice and map is copied so that a copy shares no memory with the original
// (informer caches depend on that).

var (
	_ runtime.Object = (*SecretProviderClass)(nil)
	_ runtime.Object = (*SecretProviderClassList)(nil)
	_ runtime.Object = (*SecretProviderClassPodStatus)(nil)
	_ runtime.Object = (*SecretProviderClassPodStatusList)(nil)
)

func copyStringMap(in map[string]string) map[string]string {
	if in == nil {
		return nil
	}
	out := make(map[string]string, len(in))
	for k, v := range in {
		out[k] = v
	}
	return out
}

// DeepCopyInto copies in into out.
func (in *SecretObjectData) DeepCopyInto(out *SecretObjectData) { *out = *in }

// DeepCopy returns a deep copy of in.
func (in *SecretObjectData) DeepCopy() *SecretObjectData {
	if in == nil {
		return nil
	}
	out := new(SecretObjectData)
	in.DeepCopyInto(out)
	return out
}

// DeepCopyInto copies in into out.
func (in *SecretObject) DeepCopyInto(out *SecretObject) {
	*out = *in
	out.Labels = copyStringMap(in.Labels)
	out.Annotations = copyStringMap(in.Annotations)
	if in.Data != nil {
		out.Data = make([]SecretObjectData, len(in.Data))
		copy(out.Data, in.Data)
	}
}

// DeepCopy returns a deep copy of in.
func (in *SecretObject) DeepCopy() *SecretObject {
	if in == nil {
		return nil
	}
	out := new(SecretObject)
	in.DeepCopyInto(out)
	return out
}

// DeepCopyInto copies in into out.
func (in *SecretProviderClassSpec) DeepCopyInto(out *SecretProviderClassSpec) {
	*out = *in
	out.Parameters = copyStringMap(in.Parameters)
	if in.SecretObjects != nil {
		out.SecretObjects = make([]SecretObject, len(in.SecretObjects))
		for i := range in.SecretObjects {
			in.SecretObjects[i].DeepCopyInto(&out.SecretObjects[i])
		}
	}
}

// DeepCopy returns a deep copy of in.
func (in *SecretProviderClassSpec) DeepCopy() *SecretProviderClassSpec {
	if in == nil {
		return nil
	}
	out := new(SecretProviderClassSpec)
	in.DeepCopyInto(out)
	return out
}

// DeepCopyInto copies in into out.
func (in *SecretProviderClassStatus) DeepCopyInto(out *SecretProviderClassStatus) {
	*out = *in
	if in.ByPod != nil {
		out.ByPod = make([]ByPodStatus, len(in.ByPod))
		copy(out.ByPod, in.ByPod)
	}
}

// DeepCopy returns a deep copy of in.
func (in *SecretProviderClassStatus) DeepCopy() *SecretProviderClassStatus {
	if in == nil {
		return nil
	}
	out := new(SecretProviderClassStatus)
	in.DeepCopyInto(out)
	return out
}

// DeepCopyInto copies in into out.
func (in *SecretProviderClass) DeepCopyInto(out *SecretProviderClass) {
	*out = *in
	out.TypeMeta = in.TypeMeta
	in.ObjectMeta.DeepCopyInto(&out.ObjectMeta)
	in.Spec.DeepCopyInto(&out.Spec)
	in.Status.DeepCopyInto(&out.Status)
}

// DeepCopy returns a deep copy of in.
func (in *SecretProviderClass) DeepCopy() *SecretProviderClass {
	if in == nil {
		return nil
	}
	out := new(SecretProviderClass)
	in.DeepCopyInto(out)
	return out
}

// DeepCopyObject implements runtime.Object.
func (in *SecretProviderClass) DeepCopyObject() runtime.Object {
	if c := in.DeepCopy(); c != nil {
		return c
	}
	return nil
}

// DeepCopyInto copies in into out.
func (in *SecretProviderClassList) DeepCopyInto(out *SecretProviderClassList) {
	*out = *in
	out.TypeMeta = in.TypeMeta
	in.ListMeta.DeepCopyInto(&out.ListMeta)
	if in.Items != nil {
		out.Items = make([]SecretProviderClass, len(in.Items))
		for i := range in.Items {
			in.Items[i].DeepCopyInto(&out.Items[i])
		}
	}
}

// DeepCopy returns a deep copy of in.
func (in *SecretProviderClassList) DeepCopy() *SecretProviderClassList {
	if in == nil {
		return nil
	}
	out := new(SecretProviderClassList)
	in.DeepCopyInto(out)
	return out
}

// DeepCopyObject implements runtime.Object.
func (in *SecretProviderClassList) DeepCopyObject() runtime.Object {
	if c := in.DeepCopy(); c != nil {
		return c
	}
	return nil
}

// DeepCopyInto copies in into out.
func (in *SecretProviderClassPodStatusStatus) DeepCopyInto(out *SecretProviderClassPodStatusStatus) {
	*out = *in
	if in.Objects != nil {
		out.Objects = make([]SecretProviderClassObject, len(in.Objects))
		copy(out.Objects, in.Objects)
	}
}

// DeepCopy returns a deep copy of in.
func (in *SecretProviderClassPodStatusStatus) DeepCopy() *SecretProviderClassPodStatusStatus {
	if in == nil {
		return nil
	}
	out := new(SecretProviderClassPodStatusStatus)
	in.DeepCopyInto(out)
	return out
}

// DeepCopyInto copies in into out.
func (in *SecretProviderClassPodStatus) DeepCopyInto(out *SecretProviderClassPodStatus) {
	*out = *in
	out.TypeMeta = in.TypeMeta
	in.ObjectMeta.DeepCopyInto(&out.ObjectMeta)
	in.Status.DeepCopyInto(&out.Status)
}

// DeepCopy returns a deep copy of in.
func (in *SecretProviderClassPodStatus) DeepCopy() *SecretProviderClassPodStatus {
	if in == nil {
		return nil
	}
	out := new(SecretProviderClassPodStatus)
	in.DeepCopyInto(out)
	return out
}

// DeepCopyObject implements runtime.Object.
func (in *SecretProviderClassPodStatus) DeepCopyObject() runtime.Object {
	if c := in.DeepCopy(); c != nil {
		return c
	}
	return nil
}

// DeepCopyInto copies in into out.
func (in *SecretProviderClassPodStatusList) DeepCopyInto(out *SecretProviderClassPodStatusList) {
	*out = *in
	out.TypeMeta = in.TypeMeta
	in.ListMeta.DeepCopyInto(&out.ListMeta)
	if in.Items != nil {
		out.Items = make([]SecretProviderClassPodStatus, len(in.Items))
		for i := range in.Items {
			in.Items[i].DeepCopyInto(&out.Items[i])
		}
	}
}

// DeepCopy returns a deep copy of in.
func (in *SecretProviderClassPodStatusList) DeepCopy() *SecretProviderClassPodStatusList {
	if in == nil {
		return nil
	}
	out := new(SecretProviderClassPodStatusList)
	in.DeepCopyInto(out)
	return out
}

// DeepCopyObject implements runtime.Object.
func (in *SecretProviderClassPodStatusList) DeepCopyObject() runtime.Object {
	if c := in.DeepCopy(); c != nil {
		return c
	}
	return nil
}
