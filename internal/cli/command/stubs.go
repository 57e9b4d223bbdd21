package command

import "github.com/spf13/cobra"

func newRenewCommand(*Options) *cobra.Command { return &cobra.Command{Use: "renew", Hidden: true} }
func newRotateCACommand(*Options) *cobra.Command {
	return &cobra.Command{Use: "rotate-ca", Hidden: true}
}
func newCheckCommand(*Options) *cobra.Command { return &cobra.Command{Use: "check", Hidden: true} }
