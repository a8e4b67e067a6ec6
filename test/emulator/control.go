package emulator

import "net/http"

// PLACEHOLDER: replaced by the control surface.
func (e *Emulator) serveControl(w http.ResponseWriter, r *http.Request) {
	http.NotFound(w, r)
}
