package command

import "github.com/spf13/cobra"

// newCheckCommand is not written yet.
func newCheckCommand(*Options) *cobra.Command { return &cobra.Command{Use: "check", Hidden: true} }
